"""Started by every Python process of a test run (this directory is on PYTHONPATH, see
tests/conftest.py): installs the loopback-only socket guard."""

import _edgeworks_egress_guard

_edgeworks_egress_guard.install()
