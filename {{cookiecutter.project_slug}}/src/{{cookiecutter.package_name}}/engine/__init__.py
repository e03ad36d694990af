"""What several stages run: fold set-up and trainer assembly, the epoch loop and evaluation, the prediction engine
(runtimes, activation, TTA), and scoring. Stages import the engine, never one another."""
