"""The CLI's two consoles: results on standard output, notes and errors on standard error."""

from rich.console import Console

console = Console()
err_console = Console(stderr=True)
