"""The booth's devices: card reader, document camera, receipt printer, A4 printer.

Each kind has a small async interface (a ``typing.Protocol``) with a real driver and a
simulator, picked from the configuration in one factory. Drivers translate vendor
exceptions (pyscard, python-escpos, CUPS) into :class:`shared.errors.DeviceError` and run
blocking calls on their own worker thread (:class:`DeviceWorker`). One owner object per
device (:class:`DeviceOwner`) holds the driver, serialises access and publishes its state
(:class:`DeviceStatus`); everything else reads the state and sends commands to the owner.
"""

from booth.devices.base import (
    DeviceKind,
    DeviceOwner,
    DeviceState,
    DeviceStatus,
    DeviceWorker,
    StatusListener,
)

__all__ = [
    "DeviceKind",
    "DeviceOwner",
    "DeviceState",
    "DeviceStatus",
    "DeviceWorker",
    "StatusListener",
]
