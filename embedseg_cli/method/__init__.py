"""The method: the network, its loss, test-time augmentation and the seed clustering (torch, pure)."""
