"""The parent's side of a run: the Runner and the parts it owns while the run lives.

``runner`` drives one run; ``store`` keeps each task's outcome; ``monitor`` samples the
machine's load and gates new tasks on it; ``progress`` draws the bar; ``checkpoint`` writes
finished tasks to SQLite; ``stream`` feeds and drains a run whose input is read lazily.
"""
