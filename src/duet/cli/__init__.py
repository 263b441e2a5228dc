"""The ``duet`` command line.

Start-up time matters here (every call is a new process), so: httpx imports its own
command-line tool (click, rich.progress, pygments lexers) whenever it is imported, about 45 ms
of every ``duet`` call for a tool duet never runs. A placeholder module stands in for it;
httpx then defines its ``main`` as a stub, as it does when its CLI extras are missing.
"""

import sys
import types

if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", types.ModuleType("httpx._main"))
