<#
.SYNOPSIS
    keyfleet pseudo console part: runs SecureStorageBackup.exe on a pseudo console (ConPTY) and types its password.
.DESCRIPTION
    Never run alone: keyfleet sends common.ps1, this file, then <helper>.ps1 as one script (remote.py, load_script),
    for Windows PowerShell 5.1 on .NET Framework 4.6.2+. Invoke-ToolConsole is the "console" way to hand the tool
    its password, for a tool that reads masked keys (Console.ReadKey throws when stdin is redirected). It follows
    Microsoft's "Creating a Pseudoconsole session" (learn.microsoft.com/windows/console/creating-a-pseudoconsole-session):
    two pipes, CreatePseudoConsole, a PROC_THREAD_ATTRIBUTE_PSEUDOCONSOLE attribute list, CreateProcessW with
    EXTENDED_STARTUPINFO_PRESENT, a thread that keeps draining the output pipe, ClosePseudoConsole. The password is
    touched only through .NET calls, never bound to a cmdlet parameter or piped (module logging, event 4103,
    records those). A pseudo console needs no desktop: Win32-OpenSSH's sshd, a service, runs its sessions on one
    from Windows 10 1809 on (PowerShell/Win32-OpenSSH issue 1326).
#>

# Windows 10 1809 / Windows Server 2019 (build 17763) introduced CreatePseudoConsole (its Requirements section);
# the session checks for the kernel32 export itself rather than trusting a version number.
$PseudoConsoleColumns = 500  # wide, so that the echo of any sane password stays on one line and gets masked
$PseudoConsoleBufferChars = 65536  # output kept per run; the rest is drained and dropped
$PseudoConsoleSource = @'
using System;
using System.ComponentModel;
using System.IO;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.RegularExpressions;
using System.Threading;
using Microsoft.Win32.SafeHandles;

namespace Keyfleet
{
    // One console program attached to a pseudo console. C# 5: Windows PowerShell 5.1 compiles with the
    // .NET Framework's csc.exe.
    public sealed class PseudoConsoleSession : IDisposable
    {
        const uint EXTENDED_STARTUPINFO_PRESENT = 0x00080000;
        const int STARTF_USESTDHANDLES = 0x00000100;
        const uint WAIT_OBJECT_0 = 0;
        static readonly IntPtr PROC_THREAD_ATTRIBUTE_PSEUDOCONSOLE = new IntPtr(0x00020016);
        // CSI, OSC, DCS/SOS/PM/APC strings, nF and two-character escapes (ECMA-48), then other C0 controls
        static readonly Regex Escapes = new Regex(
            @"\x1B(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1B]*(?:\x07|\x1B\\)|[PX^_][^\x1B]*\x1B\\|[ -/]+[0-~]|[0-~])|[\x00-\x08\x0B\x0C\x0E-\x1F\x7F]",
            RegexOptions.CultureInvariant);
        // a cursor position (CUP) starts a new line as far as a reader is concerned
        static readonly Regex CursorPosition = new Regex(@"\x1B\[[0-9;]*[Hf]", RegexOptions.CultureInvariant);
        static readonly Regex BlankLines = new Regex(@"[ \t]*(?:\r?\n[ \t]*)+\r?\n", RegexOptions.CultureInvariant);

        [StructLayout(LayoutKind.Sequential)]
        public struct COORD { public short X; public short Y; }

        // STARTUPINFOW with its string pointers as IntPtr (all zero), so the structure is blittable: 104 bytes on x64.
        // Public nested types: csc (warnings are errors in Add-Type) would flag fields only the marshaller assigns.
        [StructLayout(LayoutKind.Sequential)]
        public struct STARTUPINFO
        {
            public int cb;
            public IntPtr lpReserved;
            public IntPtr lpDesktop;
            public IntPtr lpTitle;
            public int dwX;
            public int dwY;
            public int dwXSize;
            public int dwYSize;
            public int dwXCountChars;
            public int dwYCountChars;
            public int dwFillAttribute;
            public int dwFlags;
            public short wShowWindow;
            public short cbReserved2;
            public IntPtr lpReserved2;
            public IntPtr hStdInput;
            public IntPtr hStdOutput;
            public IntPtr hStdError;
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct STARTUPINFOEX
        {
            public STARTUPINFO StartupInfo;
            public IntPtr lpAttributeList;
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct PROCESS_INFORMATION
        {
            public IntPtr hProcess;
            public IntPtr hThread;
            public int dwProcessId;
            public int dwThreadId;
        }

        [DllImport("kernel32.dll", SetLastError = true)]
        [return: MarshalAs(UnmanagedType.Bool)]
        static extern bool CreatePipe(out SafeFileHandle hReadPipe, out SafeFileHandle hWritePipe, IntPtr lpPipeAttributes, int nSize);

        [DllImport("kernel32.dll", ExactSpelling = true)]
        static extern int CreatePseudoConsole(COORD size, SafeFileHandle hInput, SafeFileHandle hOutput, uint dwFlags, out IntPtr phPC);

        [DllImport("kernel32.dll", ExactSpelling = true)]
        static extern void ClosePseudoConsole(IntPtr hPC);

        [DllImport("kernel32.dll", SetLastError = true, ExactSpelling = true)]
        [return: MarshalAs(UnmanagedType.Bool)]
        static extern bool InitializeProcThreadAttributeList(IntPtr lpAttributeList, int dwAttributeCount, int dwFlags, ref IntPtr lpSize);

        [DllImport("kernel32.dll", SetLastError = true, ExactSpelling = true)]
        [return: MarshalAs(UnmanagedType.Bool)]
        static extern bool UpdateProcThreadAttribute(IntPtr lpAttributeList, uint dwFlags, IntPtr attribute, IntPtr lpValue, IntPtr cbSize, IntPtr lpPreviousValue, IntPtr lpReturnSize);

        [DllImport("kernel32.dll", ExactSpelling = true)]
        static extern void DeleteProcThreadAttributeList(IntPtr lpAttributeList);

        [DllImport("kernel32.dll", CharSet = CharSet.Unicode, SetLastError = true, ExactSpelling = true)]
        [return: MarshalAs(UnmanagedType.Bool)]
        static extern bool CreateProcessW(string lpApplicationName, StringBuilder lpCommandLine, IntPtr lpProcessAttributes, IntPtr lpThreadAttributes, [MarshalAs(UnmanagedType.Bool)] bool bInheritHandles, uint dwCreationFlags, IntPtr lpEnvironment, string lpCurrentDirectory, ref STARTUPINFOEX lpStartupInfo, out PROCESS_INFORMATION lpProcessInformation);

        [DllImport("kernel32.dll", SetLastError = true)]
        static extern uint WaitForSingleObject(IntPtr hHandle, uint dwMilliseconds);

        [DllImport("kernel32.dll", SetLastError = true)]
        [return: MarshalAs(UnmanagedType.Bool)]
        static extern bool GetExitCodeProcess(IntPtr hProcess, out uint lpExitCode);

        [DllImport("kernel32.dll", SetLastError = true)]
        [return: MarshalAs(UnmanagedType.Bool)]
        static extern bool CloseHandle(IntPtr hObject);

        [DllImport("kernel32.dll", CharSet = CharSet.Unicode, ExactSpelling = true)]
        static extern IntPtr GetModuleHandleW(string lpModuleName);

        [DllImport("kernel32.dll", CharSet = CharSet.Ansi, ExactSpelling = true)]
        static extern IntPtr GetProcAddress(IntPtr hModule, string lpProcName);

        readonly object sync = new object();
        readonly StringBuilder output = new StringBuilder();
        readonly int outputLimit;
        readonly AutoResetEvent outputArrived = new AutoResetEvent(false);
        SafeFileHandle inputWrite;
        SafeFileHandle outputRead;
        FileStream input;
        Thread reader;
        IntPtr pseudoConsole = IntPtr.Zero;
        IntPtr attributeList = IntPtr.Zero;
        bool attributeListInitialized;
        PROCESS_INFORMATION process;

        PseudoConsoleSession(int outputLimit)
        {
            this.outputLimit = outputLimit;
        }

        // Windows Server 2016 has no pseudo console: kernel32 lacks the export
        public static bool IsSupported()
        {
            IntPtr kernel32 = GetModuleHandleW("kernel32.dll");
            return kernel32 != IntPtr.Zero && GetProcAddress(kernel32, "CreatePseudoConsole") != IntPtr.Zero;
        }

        public static PseudoConsoleSession Start(string application, string commandLine, string workingDirectory, int columns, int outputLimit)
        {
            PseudoConsoleSession session = new PseudoConsoleSession(outputLimit);
            try
            {
                session.Launch(application, commandLine, workingDirectory, columns);
            }
            catch
            {
                session.Dispose();
                throw;
            }
            return session;
        }

        void Launch(string application, string commandLine, string workingDirectory, int columns)
        {
            SafeFileHandle inputRead;
            SafeFileHandle outputWrite;
            if (!CreatePipe(out inputRead, out inputWrite, IntPtr.Zero, 0)) throw new Win32Exception();
            try
            {
                if (!CreatePipe(out outputRead, out outputWrite, IntPtr.Zero, 0)) throw new Win32Exception();
                try
                {
                    COORD dimensions;
                    dimensions.X = (short)columns;
                    dimensions.Y = 40;
                    int result = CreatePseudoConsole(dimensions, inputRead, outputWrite, 0, out pseudoConsole);
                    if (result != 0) throw new Win32Exception(result, "CreatePseudoConsole failed with HRESULT 0x" + result.ToString("x8"));
                }
                finally
                {
                    // the pseudo console holds its own duplicates of these ends (EchoCon sample)
                    outputWrite.Dispose();
                }
            }
            finally
            {
                inputRead.Dispose();
            }
            input = new FileStream(inputWrite, FileAccess.Write, 1, false);
            // a pseudo console stops when nobody reads its output: drain it from the start, on another thread
            // than the one that will call ClosePseudoConsole (ClosePseudoConsole documentation)
            reader = new Thread(Drain);
            reader.IsBackground = true;
            reader.Start();

            IntPtr size = IntPtr.Zero;
            InitializeProcThreadAttributeList(IntPtr.Zero, 1, 0, ref size);  // fails by design, giving the size
            if (size == IntPtr.Zero) throw new Win32Exception();
            attributeList = Marshal.AllocHGlobal(size);
            if (!InitializeProcThreadAttributeList(attributeList, 1, 0, ref size)) throw new Win32Exception();
            attributeListInitialized = true;
            if (!UpdateProcThreadAttribute(attributeList, 0, PROC_THREAD_ATTRIBUTE_PSEUDOCONSOLE, pseudoConsole, new IntPtr(IntPtr.Size), IntPtr.Zero, IntPtr.Zero))
            {
                throw new Win32Exception();
            }

            STARTUPINFOEX startup = new STARTUPINFOEX();
            startup.StartupInfo.cb = Marshal.SizeOf(typeof(STARTUPINFOEX));
            // null standard handles and no inheritance: the child gets the pseudo console's handles, never this
            // process's redirected ones (Windows Terminal, ConptyConnection.cpp; microsoft/terminal issue 11276)
            startup.StartupInfo.dwFlags = STARTF_USESTDHANDLES;
            startup.lpAttributeList = attributeList;
            // CreateProcessW may write to the command line buffer, hence the StringBuilder
            if (!CreateProcessW(application, new StringBuilder(commandLine), IntPtr.Zero, IntPtr.Zero, false,
                    EXTENDED_STARTUPINFO_PRESENT, IntPtr.Zero, workingDirectory, ref startup, out process))
            {
                throw new Win32Exception();
            }
        }

        void Drain()
        {
            Decoder decoder = new UTF8Encoding(false, false).GetDecoder();  // the pseudo console writes UTF-8
            byte[] bytes = new byte[4096];
            char[] chars = new char[8192];  // more than 4096 bytes can decode to, with bytes left from the last read
            try
            {
                using (FileStream stream = new FileStream(outputRead, FileAccess.Read, 1, false))
                {
                    int count;
                    while ((count = stream.Read(bytes, 0, bytes.Length)) > 0)
                    {
                        int decoded = decoder.GetChars(bytes, 0, count, chars, 0);
                        lock (sync)
                        {
                            int room = outputLimit - output.Length;
                            if (room > 0) output.Append(chars, 0, Math.Min(room, decoded));
                        }
                        outputArrived.Set();
                    }
                }
            }
            catch (IOException)
            {
                // the pseudo console closed its end of the pipe: the output is complete
            }
            finally
            {
                outputArrived.Set();
            }
        }

        public int ProcessId { get { return process.dwProcessId; } }

        public bool HasExited { get { return WaitForExit(0); } }

        public int ExitCode
        {
            get
            {
                uint code;
                if (!GetExitCodeProcess(process.hProcess, out code)) throw new Win32Exception();
                return unchecked((int)code);
            }
        }

        public bool WaitForExit(int milliseconds)
        {
            return WaitForSingleObject(process.hProcess, (uint)milliseconds) == WAIT_OBJECT_0;
        }

        public bool WaitForOutput(int milliseconds)
        {
            return outputArrived.WaitOne(milliseconds);
        }

        // Keystrokes for the program: the pseudo console reads its input pipe as UTF-8 text, Enter is "\r".
        // False when the pipe is closed (the program and its console are gone).
        public static bool SendKeys(PseudoConsoleSession session, byte[] keys)
        {
            try
            {
                session.input.Write(keys, 0, keys.Length);
                session.input.Flush();
                return true;
            }
            catch (IOException)
            {
                return false;
            }
        }

        // What the program has shown so far, without terminal sequences, each occurrence of secret masked
        public string Text(string secret)
        {
            string raw;
            lock (sync)
            {
                raw = output.ToString();
            }
            string text = Escapes.Replace(CursorPosition.Replace(raw, "\r\n"), "");
            text = BlankLines.Replace(text, "\r\n");
            if (!string.IsNullOrEmpty(secret)) text = text.Replace(secret, "********");
            return text;
        }

        // Ends the pseudo console (and with it any program still attached) and waits for its last output
        public void Close()
        {
            if (pseudoConsole != IntPtr.Zero)
            {
                ClosePseudoConsole(pseudoConsole);
                pseudoConsole = IntPtr.Zero;
            }
            if (reader != null) reader.Join(10000);
        }

        public void Dispose()
        {
            Close();
            if (input != null) input.Dispose();
            if (inputWrite != null) inputWrite.Dispose();
            if (outputRead != null) outputRead.Dispose();
            if (process.hThread != IntPtr.Zero) CloseHandle(process.hThread);
            if (process.hProcess != IntPtr.Zero) CloseHandle(process.hProcess);
            process = new PROCESS_INFORMATION();
            if (attributeListInitialized) DeleteProcThreadAttributeList(attributeList);
            attributeListInitialized = false;
            if (attributeList != IntPtr.Zero) Marshal.FreeHGlobal(attributeList);
            attributeList = IntPtr.Zero;
        }
    }
}
'@

function Import-PseudoConsole {
    # Add-Type compiles with csc.exe, once per process: a second Add-Type of the type would be refused
    if ($null -eq ('Keyfleet.PseudoConsoleSession' -as [type])) {
        Add-Type -TypeDefinition $PseudoConsoleSource -Language CSharp
    }
}

function Invoke-ToolConsole([string] $ToolPath, [string] $Verb, [string] $KeyFile, [double] $TimeoutSeconds) {
    Import-PseudoConsole
    if (-not [Keyfleet.PseudoConsoleSession]::IsSupported()) {
        Stop-Helper 'console-unavailable' ('this server (Windows {0}) has no pseudo console: CreatePseudoConsole needs Windows Server 2019 or later, and Windows Server 2016 has none, so SecureStorageBackup.exe cannot be typed its password here: run the wizard on the server (a backup''s key file is then taken with keyfleet collect).' -f [Environment]::OSVersion.Version)
    }
    if ($null -eq $Secret -or $Secret.Length -eq 0) { Stop-Helper 'remote' 'no password was given for SecureStorageBackup.exe' }
    $deadline = [DateTime]::UtcNow.AddSeconds($TimeoutSeconds)
    $commandLine = '"{0}" {1} "{2}"' -f $ToolPath, $Verb, $KeyFile
    # Operations Manager's documentation: the tool fails to load its DLLs outside its own folder
    $toolFolder = [IO.Path]::GetDirectoryName($ToolPath)
    $bstr = [IntPtr]::Zero
    $plain = $null
    $keys = $null
    $session = $null
    try {
        $bstr = [Runtime.InteropServices.Marshal]::SecureStringToBSTR($Secret)
        $plain = [Runtime.InteropServices.Marshal]::PtrToStringBSTR($bstr)
        $keys = [Text.Encoding]::UTF8.GetBytes($plain + "`r")
        $session = [Keyfleet.PseudoConsoleSession]::Start($ToolPath, $commandLine, $toolFolder, $PseudoConsoleColumns, $PseudoConsoleBufferChars)
        # the tool asks twice ("enter the password", "re-enter your password"); a restore may ask once and exit
        $typed = 0
        $searchFrom = 0
        while ($typed -lt 2 -and -not $session.HasExited) {
            $text = $session.Text($plain)
            $searchFrom = [Math]::Min($searchFrom, $text.Length)
            if ($text.IndexOf('password', $searchFrom, [StringComparison]::OrdinalIgnoreCase) -ge 0) {
                if (-not [Keyfleet.PseudoConsoleSession]::SendKeys($session, $keys)) { break }
                $typed += 1
                $searchFrom = $text.Length
            }
            elseif ([DateTime]::UtcNow -ge $deadline) { break }
            else { [void]$session.WaitForOutput(100) }
        }
        $remaining = [Math]::Min([Math]::Max(($deadline - [DateTime]::UtcNow).TotalMilliseconds, 0), [int]::MaxValue)
        if (-not $session.WaitForExit([int]$remaining)) {
            Stop-ToolTree $session.ProcessId
            $stopped = $session.WaitForExit(10000)
            $session.Close()
            $shown = $session.Text($plain).Trim()
            if ($shown.Length -gt 300) { $shown = '...' + $shown.Substring($shown.Length - 300) }
            $outcome = 'was stopped'
            if (-not $stopped) { $outcome = 'could not be stopped' }
            # no prompt at all: the wizard, which needs a desktop (the same kind as Invoke-ToolStdin's)
            $kind = 'tool-timeout'
            if ($typed -eq 0) { $kind = 'tool-interactive' }
            Stop-Helper $kind ('SecureStorageBackup.exe on a pseudo console did not finish within {0} s and {1} (password prompts answered: {2}); it may be waiting for the wizard, which needs a desktop: run the wizard on the server (a backup''s key file is then taken with keyfleet collect). Its last output: {3}' -f $TimeoutSeconds, $outcome, $typed, $shown)
        }
        $session.Close()
        $output = $session.Text($plain).Trim()
        if ($output.Length -gt $MaximumOutputChars) { $output = $output.Substring(0, $MaximumOutputChars) + '...' }
        return @{ exit = $session.ExitCode; output = $output; method = 'console' }
    }
    finally {
        if ($null -ne $session) { $session.Dispose() }
        if ($null -ne $keys) { [Array]::Clear($keys, 0, $keys.Length) }
        $keys = $null
        $plain = $null
        if ($bstr -ne [IntPtr]::Zero) { [Runtime.InteropServices.Marshal]::ZeroFreeBSTR($bstr) }
    }
}
