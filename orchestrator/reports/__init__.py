"""What a run shows: the HTML report (html.py) and the terminal's lines and tables (terminal.py)."""
