"""Fleet jobs: what a command does, returned as values that the commands render."""
