"""The sans-I/O protocol core: pure code over bytes, no sockets.

Handshakes (RFC 6455, hixie-75/76), frames, masking, base64 and hixie
framing, and first-byte sniffing.  Nothing here imports the rest of wsproxy.
"""
