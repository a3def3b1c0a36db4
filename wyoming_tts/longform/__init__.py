"""`wyoming-tts synth`: texts, files and books to audio files, on the server's speech service.

sources.py reads an input into chapters, plan.py cuts them into sentence groups
and names their files, output.py writes audio, manifest and playlist (temp +
rename), progress.py reports, command.py parses the command line and runs it all.
"""
