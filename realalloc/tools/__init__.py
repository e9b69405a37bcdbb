"""Tools built on the allocator: the command line, the stress runner, ``compare``
and the workloads it runs (also used by bench/).

See realalloc/__init__.py for an overview of the allocator.  Nothing in the
allocator imports from here.
"""
