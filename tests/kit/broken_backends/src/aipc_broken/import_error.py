"""Fails to import, as a plugin whose driver library is missing would."""

raise ImportError("libnpu_driver.so: cannot open shared object file")
