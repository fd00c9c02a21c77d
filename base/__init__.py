"""The base of Flowscope: settings and errors. Imports nothing else of the project, so that
every other package (collectors, store, dashboard, the command) can import it."""
