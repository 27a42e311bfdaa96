"""The wireless channel emulator on the device->server byte path."""
