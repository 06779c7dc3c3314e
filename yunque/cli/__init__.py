"""The `yunque` command line: the Typer app, one module per verb group, the REPL, the HTTP client and
the quickstart. May import everything; nothing imports it. Torch loads only inside a command."""
