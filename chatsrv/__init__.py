"""chatsrv: a self-hostable real-time chat backend on Trio."""

__version__ = "0.1.0"
