"""What crosses the boundary between the parent and a worker process; both sides import it.

- :mod:`.pickling`: the C pickler first, dill only for what it refuses; :class:`~.pickling.Own`
  and :class:`~.pickling.Unloadable` for values that must not share objects; a task's
  :class:`~.pickling.Failure`, with its traceback text, able to cross.
- :mod:`.dilled`: dill, for what the C pickler refuses and for what a notebook's ``__main__``
  defines (imported only when a pickle needs it).
- :mod:`.shm`: the payload's pickler that moves large NumPy arrays to shared memory once.
- :mod:`.messages`: the messages themselves (payload, chunk, batch, the exit and release
  markers) and the slot a worker shares with its parent.

It is a package, not one module, because :mod:`parallel_jobs.records` needs pickling (a
:class:`~parallel_jobs.records.Batch` holds failures) while the messages are made of records:
pickling sits below the records and the messages above them, with no import cycle. This file
imports nothing, so that importing one part loads only what that part needs.
"""
