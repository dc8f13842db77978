"""What a training stage does, torch-free: its configuration, the rules that pick a method and
judge its progress, and the retention prompt pool."""
