{
  "targets": [
    {
      "target_name": "peercred",
      "sources": ["agent/native/peercred.c"],
      "cflags": ["-Wall", "-Wextra", "-O2"]
    }
  ]
}
