"""RFC 5322 / MIME on stored message bytes (CRLF), with exact octet offsets.

* ``parse``        header fields, RFC 2047 decoding, MIME parameters
* ``mime``         the MIME tree (iterative, depth- and part-limited)
* ``envelope``     IMAP ENVELOPE
* ``bodystructure``IMAP BODY / BODYSTRUCTURE (agrees with Dovecot byte for byte)
* ``sections``     BODY[section], partials, BINARY decoding
* ``text``         decoded text for search and PREVIEW (RFC 8970)
* ``searchctx``    a ready search context for ``protocol.imap.search.evaluate``
"""
