"""The old Flask design (thread pool + blocking requests.get) that satapi replaces."""
