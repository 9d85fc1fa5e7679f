"""The faust agent groups, one module each; streams/app.py installs the groups a process runs."""
