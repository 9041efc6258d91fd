"""keyfleet: back up the SCSM encryption keys of a fleet of Windows servers over WinRM."""

__version__ = "0.1.0"
