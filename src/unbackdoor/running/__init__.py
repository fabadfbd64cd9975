"""Running: typed configs, run directories, sweep cells and process runtime. Imports nothing else of unbackdoor."""
