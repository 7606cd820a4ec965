"""Image and analysis store backends behind the `satapi.storage` protocols."""
