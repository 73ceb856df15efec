"""Sub-tile inference results: the contract (schemas) and their storage."""
