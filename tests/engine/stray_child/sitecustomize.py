"""For the harness test: with ``BRECCIA_TEST_STRAY_CHILD=1``, every Python process that starts
with this folder on its PYTHONPATH (SGLang's scheduler and detokenizer) starts a ``sleep``: a
helper that, unlike SGLang's own processes, does not die with its parent. Only ending the
whole process group ends it."""

import os
import subprocess

if os.environ.get("BRECCIA_TEST_STRAY_CHILD") == "1":
    subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
