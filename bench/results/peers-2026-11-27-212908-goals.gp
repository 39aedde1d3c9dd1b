set terminal pngcairo size 960,540 font 'sans,10'
set output '/work/main/bench/results/peers-2026-11-27-212908-goals.png'
set title 'Goals: measured / goal (1 = goal just met; above is better)'
set style fill solid 0.8 border -1
set boxwidth 0.7
set grid ytics
set yrange [0:*]
set xtics rotate by -30
set key off
plot '/work/main/bench/results/peers-2026-11-27-212908-goals.dat' using 1:3:xtic(2) with boxes, 1 with lines lw 2 dt 2
