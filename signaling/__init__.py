"""The signaling server: presence, queue, matching, SDP/ICE relay, session timeline."""
