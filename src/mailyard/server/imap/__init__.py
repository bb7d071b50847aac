"""The IMAP server adapter: :func:`handle_imap` serves one connection over asyncio streams."""

from mailyard.server.imap.session import handle_imap

__all__ = ["handle_imap"]
