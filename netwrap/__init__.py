"""netwrap: run one command tree in its own network namespace.

Importing this package stays cheap: nothing here pulls in pyroute2, sh or any
other slow dependency; modules import those where they are used.
"""

__version__ = "0.1.0"
