"""The booth agent: the booth's WebRTC peer, its devices and the resident's touch UI."""
