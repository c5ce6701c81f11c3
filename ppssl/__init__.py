"""The ``ppssl`` command line: a thin layer over engine/, training/, indexer/ and ui/."""
