"""One module per report section; each takes the metrics dict (and context) and returns HTML."""
