"""The session layer: one command with stdin on one host over WinRM (pywinrm), its transport and Kerberos."""
