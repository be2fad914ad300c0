"""Running the watchers: the watcher coroutine, the shared engine thread and its session,
callbacks in order on threads of their own."""
