"""The ``sentio`` command line (the library is ``sentio_core``)."""
