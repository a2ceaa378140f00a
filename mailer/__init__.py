"""mailmag's sending engine: issues, rendering, scheduling, the delivery queue, SMTP.

This package never imports ``subscriptions``. What it needs from the opt-in store it
declares as ``typing.Protocol``s; ``subscriptions`` implements them and wires them in its app
factory, so personal data reaches the engine only through those narrow doors.
"""
