"""Code shared by the booth agent, the signaling server and the HQ console."""
