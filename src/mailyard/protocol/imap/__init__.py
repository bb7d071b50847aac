"""Sans-IO IMAP4rev2 (RFC 9051) / IMAP4rev1 (RFC 3501) core.

No sockets, clock or storage in here: bytes in, events and response bytes out.

* ``parser.CommandParser``   framing: literals, LITERAL+/-, APPEND streaming, IDLE/SASL lines
* ``grammar``                one assembled command -> a typed object of ``commands``
* ``commands``               command dataclasses and the other parser events
* ``states``                 the state table (which command in which state) and transitions
* ``sequence``               sequence sets as ranges (``*``, ``$``)
* ``search``                 search-key tree and an iterative evaluator
* ``mailbox``                modified UTF-7 and mailbox-name rules
* ``response``               response serialisers
* ``fetch``                  FETCH items from message bytes / index rows; \\Seen rules

The asyncio session (server/) drives a ``CommandParser`` per connection, checks
``states.check(cmd, state)``, runs the command against ``storage.interface.Store``
and writes what ``response`` produces.
"""
