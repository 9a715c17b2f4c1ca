"""The process model: the supervisor (netwrap's parent), the sandbox's init, their channel, the setup plan."""
