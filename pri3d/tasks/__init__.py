"""Task runners: build the parts from a config and run them."""
