"""The lab fleet: an emulated fleet of SCSM servers speaking real WS-Management over loopback."""
