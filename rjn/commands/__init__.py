"""The use cases, one module per command (pipx's layout): each takes the project's Config (and
a reporter), does the work through the action modules, and returns a record (rjn/records.py)
for the CLI to show. The CLI imports only the command it runs."""
