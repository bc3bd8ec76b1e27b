"""One thin module per command-line tool: parse flags, call one library function, map input errors to exit 2."""
