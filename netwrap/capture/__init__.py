"""Packet capture: packet rings, views (child, egress, wire-egress), the pcapng writer."""
