"""What nodes say to each other: identity keys, signed envelopes, canonical encodings."""
