"""The notebook face: IPython magics, live widgets and plots."""
