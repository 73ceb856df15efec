"""All side effects live here: reading and writing files and object stores."""
