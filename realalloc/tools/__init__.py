"""Tools built on the allocator: the command line and the stress runner.

See realalloc/__init__.py for an overview of the allocator.  Nothing in the
allocator imports from here.
"""
