"""What several test modules share: stand-in servers, builders, processes."""
