"""Usage metered elsewhere, reported to the meter: OTLP spans and CloudEvents in, events out.

readings.py checks a reading whichever way it came; otlp.py and cloudevents.py make
readings out of what each channel carries and answer in its terms; recorder.py prices,
charges and appends them, each once.
"""

from .recorder import Recorder, Result

__all__ = ["Recorder", "Result"]
